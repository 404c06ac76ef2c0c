"""From a folder of photos or a video to a posed nerfstudio dataset (``splat2splat process``), on pycolmap.

``inputs`` stages the frames (EXIF-upright photos, or the sharpest frame of each stretch of a video),
``reconstruct`` runs COLMAP's pipeline through pycolmap (SIFT, matching, mapping, undistortion),
``nerfstudio_output`` writes transforms.json and its companions as ns-process-data does, ``report`` says what
registered and draws the contact sheet and camera path, ``resume`` records the finished stages so that an
interrupted run continues, and ``process`` ties them together atomically.
"""
