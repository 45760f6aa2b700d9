"""The router's offline side: eval set, judge, answer collection, metrics, training, evaluation."""
