"""The model and its pretraining: the char tokenizer, masked-LM pretraining of the embedded
encoder, model cards, and the ONNX export and runtime."""
