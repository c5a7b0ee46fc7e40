"""Grad-CAM: where a model looked, as heat maps over the images."""


import weakref

import cv2
import numpy as np
import tensorflow as tf

from tfresnet.errors import UserError
from tfresnet.evaluation.predictions import read_images, shown_path
from tfresnet.runs.files import atomic_write_image, make_dir
from tfresnet.runs.run_folder import load_model

_COMPILED = weakref.WeakKeyDictionary()  # model -> its compiled Grad-CAM step


CAPTION_HEIGHT = 28


def _cam_step(model):
    """``(pixels, target) -> (heat maps, probabilities)`` as one tf.function per model;
    a negative target means the predicted class."""
    if model in _COMPILED:
        return _COMPILED[model]

    @tf.function(reduce_retracing=True)
    def step(pixels, target):
        feature_map = tf.cast(model.feature_map(pixels), tf.float32)
        with tf.GradientTape() as tape:
            tape.watch(feature_map)
            logits = model.head(feature_map)
            target = tf.where(target < 0, tf.argmax(logits, axis=1, output_type=tf.int32),
                              target)
            score = tf.reduce_sum(tf.gather(logits, target, axis=1, batch_dims=1))
        channel_weights = tf.reduce_mean(tape.gradient(score, feature_map), axis=(1, 2))
        cam = tf.nn.relu(tf.einsum("nhwc,nc->nhw", feature_map, channel_weights))
        cam = tf.image.resize(cam[..., None], tf.shape(pixels)[1:3], "bilinear")[..., 0]
        peak = tf.reduce_max(cam, axis=(1, 2), keepdims=True)
        cam = tf.math.divide_no_nan(cam, peak)  # a map with no positive evidence stays 0
        return cam, tf.nn.softmax(logits)

    _COMPILED[model] = step
    return step


def _targets(model, count, class_index):
    if class_index is None:
        return np.full(count, -1, np.int32)
    targets = np.broadcast_to(np.asarray(class_index, np.int32), (count,))
    if np.any((targets < 0) | (targets >= len(model.class_names))):
        raise UserError(f"class index out of range 0..{len(model.class_names) - 1}. "
                        f"Received: {class_index}")
    return targets


def cams_and_probabilities(model, images, class_index=None, batch_size=64):
    """Grad-CAM heat maps ``(N, H, W)`` and the softmax probabilities ``(N, classes)``.

    Args: as `grad_cam`.
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise UserError(f"images must be (N, H, W, 3) RGB pixels. Received: {images.shape}")
    targets = _targets(model, len(images), class_index)
    step = _cam_step(model)
    cams, probabilities = [], []
    for start in range(0, len(images), batch_size):
        cam, prob = step(tf.constant(images[start:start + batch_size], tf.float32),
                         tf.constant(targets[start:start + batch_size]))
        cams.append(cam.numpy())
        probabilities.append(prob.numpy())
    return np.concatenate(cams), np.concatenate(probabilities)


def grad_cam(model, images, class_index=None, batch_size=64):
    """Grad-CAM heat maps of a tfresnet `Classifier` on the last convolutional stage.

    Args:
        model: a `Classifier` (what `tfresnet.train` saves).
        images: ``(N, H, W, 3)`` RGB pixels, 0-255, at the model's input size.
        class_index: the class to explain: None (each image's predicted class), one index
            for all images, or one index per image.
        batch_size: images per compiled call.

    Returns:
        float32 array ``(N, H, W)`` in [0, 1] at the input's resolution; 1 marks the
        places whose features raised the class's logit most.
    """
    return cams_and_probabilities(model, images, class_index, batch_size)[0]


def overlay(image, cam, alpha=0.45):
    """The heat map (OpenCV's JET colours) blended over an RGB image; returns BGR uint8."""
    heat = cv2.applyColorMap(np.uint8(np.clip(cam, 0, 1) * 255), cv2.COLORMAP_JET)
    return cv2.addWeighted(image[..., ::-1].astype(np.uint8), 1 - alpha, heat, alpha, 0)


def explained_picture(image, cam, caption, size=224):
    """Original and overlay side by side, upscaled to ``size`` px, with a caption below."""
    scale = max(1, round(size / max(image.shape[:2])))
    height, width = image.shape[0] * scale, image.shape[1] * scale
    big = cv2.resize(image, (width, height), interpolation=cv2.INTER_CUBIC)
    big_cam = cv2.resize(cam, (width, height), interpolation=cv2.INTER_LINEAR)
    canvas = np.full((height + CAPTION_HEIGHT, 2 * width, 3), 24, np.uint8)
    canvas[:height, :width] = big[..., ::-1]
    canvas[:height, width:] = overlay(big, big_cam)
    cv2.putText(canvas, caption, (6, height + 19), cv2.FONT_HERSHEY_SIMPLEX, 0.5,
                (255, 255, 255), 1, cv2.LINE_AA)
    return canvas


def class_to_index(model, name_or_index):
    """``--class`` as a class name or an index of the model's classes."""
    if name_or_index is None:
        return None
    if name_or_index in model.class_names:
        return model.class_names.index(name_or_index)
    if name_or_index.isdigit() and int(name_or_index) < len(model.class_names):
        return int(name_or_index)
    raise UserError(f"--class {name_or_index!r} is neither a class of the model nor an index "
                    f"below {len(model.class_names)}")


def explain(model_path, target, out_dir, class_name=None, size=224):
    """Writes ``<image>_cam.png`` per readable image of ``target`` (a folder's in the
    sub-folders they are in); returns their paths."""
    model = load_model(model_path)
    class_index = class_to_index(model, class_name)
    images, files = read_images(target, model.view)
    out_dir = make_dir(out_dir)
    cams, probabilities = cams_and_probabilities(model, images, class_index)
    written = []
    for path, image, cam, prob in zip(files, images, cams, probabilities):
        shown = int(np.argmax(prob)) if class_index is None else class_index
        caption = f"{model.class_names[shown]} {100 * prob[shown]:.1f}%"
        if class_index is not None:
            caption += f" (predicted {model.class_names[int(np.argmax(prob))]})"
        name = shown_path(path, target)
        out = make_dir(out_dir / name.parent) / f"{name.stem}_cam.png"
        atomic_write_image(out, explained_picture(image, cam, caption, size))
        print(f"{out}: {caption}")
        written.append(out)
    return written

