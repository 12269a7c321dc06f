"""Desktop side: data loading, landmark cache, training and evaluation of the fusion model."""
