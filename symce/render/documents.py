def render_document(derivation, fmt):  # placeholder replaced below
    raise NotImplementedError
