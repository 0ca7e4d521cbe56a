"""One router per resource: health, model, segment, metrics, the demo page."""
