from gan_prune.cli import main

main()
