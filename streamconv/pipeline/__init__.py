"""One conversion from start to end: the checked options, the run that feeds a plan's tensors
through the stages into the writer, the assets beside the weights, the staged output folder and
the result."""
