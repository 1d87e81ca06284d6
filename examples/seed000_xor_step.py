"""Seed 000: one backpropagation step on XOR, printed beside the lecture's numbers.

2-2-1 network, ReLU hidden, sigmoid output, binary cross-entropy, SGD lr 0.1, input (0, 1),
target 1; weights in the (out, in) convention (w_ij: i receives, j sends).

    python examples/seed000_xor_step.py
"""

import numpy as np

import fastnn


def row(name, ours, notes):
    ours_text = str(np.asarray(fastnn.to_numpy(ours), dtype=np.float64).round(5).tolist())
    print(f"  {name:24s} fastnn {ours_text:32s} notes {notes}")


def main():
    hidden = fastnn.Linear(2, 2, "relu", dtype=np.float64)
    output = fastnn.Linear(2, 1, "sigmoid", dtype=np.float64)
    hidden.weight, hidden.bias = [[0.4, -0.2], [0.1, 0.6]], [0.3, -0.4]
    output.weight, output.bias = [[-0.5, 0.8]], [-0.7]
    net = fastnn.Network([hidden, output])

    y_hat = net.forward([[0.0, 1.0]])
    loss, dloss = fastnn.losses.BCE()(y_hat, [[1.0]])
    print("forward")
    row("z_hidden", hidden._slot[0][0], "[0.1, 0.2]")
    row("z3", output._slot[0][0], "-0.59")
    row("y_hat", y_hat[0], "0.3566")
    row("loss", float(loss), "1.0310")
    net.backward(dloss)
    print("backward")
    row("dL/dz3", output._slot[2][0], "-0.6434")
    row("dW_out", output.grads["weight"][0], "[-0.06434, -0.1287]")
    row("db_out", output.grads["bias"], "-0.6434")
    row("dz_hidden", hidden._slot[2][0], "[0.3217, -0.5147]")
    row("dW_hidden", hidden.grads["weight"], "[[0, 0.3217], [0, -0.5147]]")
    fastnn.SGD(lr=0.1).step(net)
    print("after one SGD step (lr 0.1)")
    row("W_out", output.weight[0], "[-0.4936, 0.8129]")
    row("b_out", output.bias, "-0.6357")
    row("W_hidden", hidden.weight, "[[0.4, -0.23217], [0.1, 0.65147]]")
    row("b_hidden", hidden.bias, "[0.26783, -0.34853]")


if __name__ == "__main__":
    main()
