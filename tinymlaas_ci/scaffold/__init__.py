"""Templates for new things: ``tinymlaas init`` repositories and ``tinymlaas export`` bundles."""
