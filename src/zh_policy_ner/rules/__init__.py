"""The guideline and the span layers: the guideline as data (guideline), the dictionary tagger,
guideline rules and place names (lexicon), the ordered layer list laid over the model's spans
(layers), and the baselines made of taggers (baselines)."""
