"""The ranker job's discretizer quantiles: exact, and blind to row order and missing values."""

import numpy as np
import pandas as pd

from jobs.train_ranker import column_quantiles


def test_quantiles_are_exact_values_whatever_the_row_order(rng):
    values = rng.normal(size=1001)
    frame = pd.DataFrame({"x": values, "y": np.where(np.arange(1001) % 3 == 0, np.nan, values)})
    expected = column_quantiles(frame, ["x", "y"], [0.25, 0.5, 0.75])
    shuffled = column_quantiles(frame.sample(frac=1.0, random_state=7), ["x", "y"], [0.25, 0.5, 0.75])
    assert shuffled == expected
    assert expected["x"][1] == np.sort(values)[500]  # the median is a value of the data
    assert expected["y"] == np.quantile(values[np.arange(1001) % 3 != 0], [0.25, 0.5, 0.75],
                                        method="inverted_cdf").tolist()


def test_a_column_without_values_has_no_quantiles():
    frame = pd.DataFrame({"x": [np.nan, np.nan], "y": pd.array([None, 2], dtype="Int64")})
    assert column_quantiles(frame, ["x", "y"], [0.5]) == {"x": [], "y": [2.0]}
