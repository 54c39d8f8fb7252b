"""What both Flask services share: app skeleton, errors, operator auth, health, metrics, gunicorn config."""
