"""``tinymlaas init``: the template of a new adopter repository and the code that writes it."""
