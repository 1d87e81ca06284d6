"""Seed 002: XOR with one hidden layer of 2 sigmoid units, BCE, full batch of 4; prints the four
predictions and writes the decision-boundary picture the notes ask for.

    python examples/seed002_xor_training.py [--plot xor-boundary.png]
"""

import argparse

import numpy as np

import fastnn


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--plot", default="xor-boundary.png", help="where to write the picture ('' for none)")
    args = parser.parse_args(argv)
    X, y = fastnn.datasets.xor()
    net = fastnn.Network([fastnn.Linear(2, 2, "sigmoid", init="xavier", seed=3), fastnn.Linear(2, 1, seed=4)])
    history = net.fit(X, y, "bce_with_logits", fastnn.SGD(lr=2.0, momentum=0.9), epochs=1500, batch_size=4,
                      shuffle=False, progress=False)
    probabilities = 1 / (1 + np.exp(-fastnn.to_numpy(net.predict(X))[:, 0]))
    print(f"loss: first epoch {history['loss'][0]:.4f}, last {history['loss'][-1]:.4f}")
    for point, target, p in zip(X, y[:, 0], probabilities):
        print(f"  x = {point}  target {int(target)}  P(1) = {p:.4f}  predicted {int(p > 0.5)}")
    correct = int(((probabilities > 0.5) == (y[:, 0] > 0.5)).sum())
    print(f"{correct} of 4 points classified correctly (the notes: all 4)")
    if args.plot:
        print("decision boundary written to", fastnn.plots.decision_boundary(net, X, y, args.plot, title="XOR, 2-2-1"))
    return correct


if __name__ == "__main__":
    main()
