"""The networks' input size: every image and slice is resized to 224 x 224 (the papers' protocol).

One home for the fact: the pipelines resize to it, the bundles declare it, the inferer resizes slices to it,
the complexity counter and the TorchScript trace use it, and SETR and TransUNet learn their position embedding
at it. It lives here, below transforms and networks, so that each of them can import it.
"""

INPUT_SIZE = (224, 224)  #: (H, W) in pixels
