"""MNIST for P1, P2, P3 and P5: the data, the homework's classifier, P2's and P3's fine-tuning recipe, their figures,
and the fast inference path of P1's rank-D network."""
