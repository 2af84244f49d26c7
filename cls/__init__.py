"""Classification benchmarks on the shared ViT: end-to-end fine-tuning (paper Tab. 5) on the mmengine Runner."""
