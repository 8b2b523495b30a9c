"""One implementation each of the helpers every stage needs: device resolution, the cache directory, image
conversion and grids, and fingerprints of networks and files. Imports nothing above errors, fileio and defaults."""
