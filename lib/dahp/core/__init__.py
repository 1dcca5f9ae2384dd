"""The bottom layer: configuration records and the one error for bad input, paths, the device, the
on-disk cache and progress bars. Nothing here knows about data, models or attribution."""
