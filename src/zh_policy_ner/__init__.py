"""zh-policy-ner: PER, LOC and POLICY recognition in Chinese government meeting reports."""

__version__ = "0.1.0"
