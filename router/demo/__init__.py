"""The one-command demo: model servers, synthetic records, the story."""
