"""Focus-DETR (Zheng et al., ICCV 2023) building blocks, ported from detrex ``projects/focus_detr``.

- :mod:`.fts`: foreground token selector (mask predictor, top-down score modulation, cascade token selection,
  FCOS-style foreground labels).
- :mod:`.neck`: ChannelMapper neck (three mapped backbone levels plus one extra stride-2 level).
- :mod:`.losses`: sigmoid focal loss and the foreground supervision loss, both computed from logits.
"""
