"""Detection and instance segmentation: ViTDet Mask R-CNN on torchvision, COCO evaluation."""
