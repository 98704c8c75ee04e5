"""Image and text backbones behind two small interfaces, chosen by config.

Image: ``forward(images (B, 3, H, W)) -> (fmap (B, C, h, w), global (B, D))``, with ``channels``
(C) and ``grid`` (h, w). Text: ``tokenize(texts) -> dict`` and ``forward(tokens) ->
(token features (B, L, D), global (B, D), mask (B, L) bool)``.

``weights`` in a backbone config is ``""`` (random init), ``"package:<module>"`` (weights that
ship inside an installed pip package) or a local file path (CLIP weights a user gives).
"""
