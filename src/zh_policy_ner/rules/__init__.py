"""The guideline and the span layers: the guideline as data (guideline), the dictionary tagger,
guideline rules and place names (lexicon), word boundaries for whole-word decoding (words), the
ordered layer list laid over the model's spans (layers), and the baselines made of taggers
(baselines)."""
