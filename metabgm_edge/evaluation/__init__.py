"""The paper's Section III-C/D: metrics and the `eval` command (needs the eval extra: nltk, rouge-score)."""
