"""HTTP routes, one router per resource; each route validates, calls a registry/inference function and shapes the answer."""
