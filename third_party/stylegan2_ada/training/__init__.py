"""Networks (and the ADA augmentation pipeline) with the public interface of stylegan2-ada-pytorch."""
