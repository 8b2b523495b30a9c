"""Fine-tuning the pruned generator: DiME, NICKEL, adversarial losses and the training loop."""
