"""detectron2's ROIAlign bilinear sampling (ROIAlign_cpu.cpp ``pre_calc_for_bilinear_interpolate``), written from
the C++ semantics for the ROIAlign tests: zero outside ``[-1, size]``, clamped to the border inside."""


def bilinear_terms(height, width, y, x):
    """(row, col, weight) of one sample, ROIAlign_cpu.cpp ``pre_calc_for_bilinear_interpolate``."""
    if y < -1.0 or y > height or x < -1.0 or x > width:
        return []
    y, x = max(y, 0.0), max(x, 0.0)
    y_low, x_low = int(y), int(x)
    if y_low >= height - 1:
        y_high = y_low = height - 1
        y = float(y_low)
    else:
        y_high = y_low + 1
    if x_low >= width - 1:
        x_high = x_low = width - 1
        x = float(x_low)
    else:
        x_high = x_low + 1
    ly, lx = y - y_low, x - x_low
    hy, hx = 1.0 - ly, 1.0 - lx
    return [(y_low, x_low, hy * hx), (y_low, x_high, hy * lx), (y_high, x_low, ly * hx), (y_high, x_high, ly * lx)]
