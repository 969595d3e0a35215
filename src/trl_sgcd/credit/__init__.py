"""The method, one stage a file: siblings -> evidence -> reference -> teacher -> divergence -> saliency -> weights."""
