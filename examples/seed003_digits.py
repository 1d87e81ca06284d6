"""Seed 003: the 64-128-64-10 digits network, trained two ways, with accuracy and confusion matrix.

1. The lecture's recipe: sigmoid everywhere, MSE on one-hot targets, SGD lr 0.5, batches of 64,
   40000 mini-batches, weights and biases drawn from U(-0.5, 0.5) (its ``np.random.rand - 0.5``).
   The lecture averages each sample's gradient of an MSE over 10 outputs across the 64 samples;
   fastnn's MSE is the mean over all 640 elements, whose gradient is exactly that average, so
   lr 0.5 means the same step. (The lecture draws each mini-batch afresh; fastnn shuffles epochs.)
2. The modern one: ReLU, softmax cross-entropy on logits, SGD with momentum.

    python examples/seed003_digits.py [--plot digits-confusion.png] [--quick]
"""

import argparse
import time

import numpy as np

import fastnn


def train(name, layers, loss, y_train, y_test, optimizer, epochs, X_train, X_test):
    net = fastnn.Network(layers)
    started = time.perf_counter()
    net.fit(X_train, y_train, loss, optimizer, epochs=epochs, batch_size=64, seed=0, progress=False)
    result = net.evaluate(X_test, y_test)
    print(f"{name}: test accuracy {result['accuracy']:.4f} after {epochs} epochs "
          f"({time.perf_counter() - started:.1f} s)")
    return net, result["accuracy"]


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--plot", default="digits-confusion.png", help="confusion-matrix picture ('' for none)")
    parser.add_argument("--quick", action="store_true", help="fewer epochs (a smoke run)")
    args = parser.parse_args(argv)
    X_train, X_test, y_train, y_test = fastnn.datasets.digits()
    print(f"{len(X_train)} training and {len(X_test)} test images (the notes: 1437 / 360)")
    sizes = (64, 128, 64, 10)

    # 40000 mini-batches of 64 = 40000 * 64 / 1437 epochs, about 1781
    epochs = 60 if args.quick else 1781
    rng = np.random.default_rng(0)
    sigmoid_layers = []
    for fan_in, fan_out in zip(sizes, sizes[1:]):
        layer = fastnn.Linear(fan_in, fan_out, "sigmoid")
        layer.weight = (rng.random((fan_in, fan_out)) - 0.5).T  # the lecture stores (in, out)
        layer.bias = rng.random(fan_out) - 0.5
        sigmoid_layers.append(layer)
    _, lecture = train("sigmoid + MSE, lr 0.5 (the lecture)", sigmoid_layers, "mse",
                       fastnn.datasets.one_hot(y_train, 10), fastnn.datasets.one_hot(y_test, 10),
                       fastnn.SGD(lr=0.5), epochs, X_train, X_test)
    print("  the notes report 0.98")
    relu_layers = [fastnn.Linear(64, 128, "relu", seed=0), fastnn.Linear(128, 64, "relu", seed=1),
                   fastnn.Linear(64, 10, seed=2)]
    net, modern = train("ReLU + cross-entropy, SGD momentum 0.9", relu_layers, "cross_entropy", y_train, y_test,
                        fastnn.SGD(0.05, momentum=0.9), 10 if args.quick else 40, X_train, X_test)
    predicted = np.argmax(fastnn.to_numpy(net.predict(X_test)), axis=1)
    counts = fastnn.plots.confusion_counts(predicted, y_test, 10)
    print("confusion matrix (rows: true digit, columns: predicted)")
    for digit, counts_row in enumerate(counts):
        print(f"  {digit}: " + " ".join(f"{c:3d}" for c in counts_row))
    if args.plot:
        print("confusion matrix written to",
              fastnn.plots.confusion_matrix(net, X_test, y_test, args.plot, title="digits, ReLU + CE"))
    return lecture, modern


if __name__ == "__main__":
    main()
