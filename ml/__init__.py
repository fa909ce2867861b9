"""classcomp's library: data, models, training, analysis and figures. Knows nothing of HTTP or queues."""
