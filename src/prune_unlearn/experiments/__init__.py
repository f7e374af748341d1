"""The paper's evaluation: data sets, training recipes, baselines, membership inference, table runners."""
