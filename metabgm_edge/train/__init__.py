"""Fine-tuning (the paper's Section III-B). Needs the export extra; never imported by the runtime."""
