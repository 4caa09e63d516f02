"""References for pure.search: exhaustive Python loops, one loss evaluation at a time."""

import itertools


def grid_search(loss_fn, grids):
    names = list(grids)
    points = [dict(zip(names, values, strict=True)) for values in itertools.product(*(list(grids[n]) for n in names))]
    scores = [float(loss_fn(p)) for p in points]
    best = min(range(len(points)), key=scores.__getitem__)
    return points[best], scores[best]
