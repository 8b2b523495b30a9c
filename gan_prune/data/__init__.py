"""Images for training and evaluation: StyleGAN2-ADA datasets (zip or folder), and the batch sources of the
training loop (real images in a resumable order, or teacher samples when training data-free)."""
