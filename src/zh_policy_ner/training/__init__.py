"""The main job: the trainer (model, head rows, fit, loss), the boosters that only produce
datasets (silver stage, mention swap, self-training) and train_on, which orchestrates them."""
