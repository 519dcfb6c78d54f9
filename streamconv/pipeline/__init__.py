"""One conversion from start to end: the checked options, the run that feeds a plan's tensors
through the stages into the writer, the assets beside the weights, the result, and the validation
the user asked for (a conversion may end with a tool; a tool never runs a conversion)."""
