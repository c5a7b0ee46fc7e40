"""A run's data: loaded at its input size, its augmenter, then streamed in `tf.data`."""


from tfresnet.data import load_dataset
from tfresnet.data.augment import PHOTO_REPLACED, Augmenter
from tfresnet.data.pipeline import make_eval_pipeline, make_train_pipeline


def load_data(settings, seed, size):
    """The data set of the `DataSettings`, with its validation split drawn by ``seed``; an
    image folder is listed (not decoded) with the input side ``size``
    (`tfresnet.training.plan.input_size`) and the run's preprocessing."""
    return load_dataset(settings.dataset, data_dir=settings.data_dir,
                        val_size=settings.val_size, seed=seed,
                        image_size=(size, size) if size else None, view=settings.preprocess,
                        crop_scale=settings.crop_scale, crop_ratio=settings.crop_ratio,
                        eval_crop=settings.eval_crop)


def make_augmenter(augment, data, seed):
    """The batch augmentations of a run: the ``--augment`` spec, for photos without the
    operations each image's random-resized crop replaces."""
    return Augmenter(augment, data.num_classes, seed,
                     skip=PHOTO_REPLACED if data.preprocessing == "photo" else ())


def make_pipelines(augment, data, runtime, plan, start_epoch=0, arrays=None, start_step=0):
    """``(train, validation)`` pipelines as ``plan`` says, seeded by the runtime's seed.
    Training batches are augmented here (by the ``augment`` spec) unless the model augments
    them in its step; validation is None without a validation split.

    Args:
        start_epoch: the first epoch the stream yields (resuming).
        start_step: its first step (resuming inside an epoch).
        arrays: ``(x_train, y_train, x_val, y_val)`` to use instead of the data set's own
            arrays (a tuner passes tensors made once for the whole search).
    """
    batch, steps = plan.batch_size, plan.steps_per_epoch
    x_train, y_train, x_val, y_val = arrays or (data.x_train, data.y_train, data.x_val,
                                                data.y_val)
    seed = runtime.seed
    augmenter = make_augmenter(augment, data, seed) if plan.augment_on == "tf.data" else None
    x_train = data.training_images(augment, x_train)  # each tuner trial's own spec

    def stream(split=None):
        return make_train_pipeline(x_train, y_train, data.num_classes, batch, augmenter,
                                   seed, start_epoch, split, steps, start_step)[0]

    strategy = runtime.strategy
    replicas = strategy.num_replicas_in_sync
    if replicas == 1:
        train = stream()
    else:  # each input pipeline (worker) yields its replicas' parts of every global batch
        train = strategy.distribute_datasets_from_function(lambda context: stream(
            (replicas, context.num_input_pipelines, context.input_pipeline_id)))
    validation = (make_eval_pipeline(x_val, y_val, data.num_classes, batch)
                  if len(x_val) else None)
    return train, validation
