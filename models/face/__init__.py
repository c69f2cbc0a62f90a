"""Face backbones, registered on import: `face.iresnet18/34/50/100` and `face.mobilefacenet`.

`models.face.published` converts published face checkpoints (A-SKD, F-SKD, insightface,
AdaDistill) to these models' key names; it registers nothing.
"""

from models.face import iresnet, mobilefacenet  # noqa: F401  (registration)
