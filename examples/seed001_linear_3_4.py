"""Seed 001: Linear(3, 4) with weights 1..12 and ReLU, then a zero-initialised Linear(4, 2) with
sigmoid, forward and backward, printed beside the lecture's numbers.

    python examples/seed001_linear_3_4.py
"""

import numpy as np

import fastnn


def main():
    layer1 = fastnn.Linear(3, 4, "relu", dtype=np.float64)
    layer1.weight = np.arange(1, 13).reshape(4, 3)  # nn.Linear(3, 4).weight is 4 x 3
    layer1.bias = np.zeros(4)
    z = layer1.forward(np.array([1.0, 2.0, 3.0]))
    print(f"z = W x            fastnn {z}   notes [14, 32, 50, 68]")
    dx = layer1.backward(np.full(4, 0.5))
    print(f"dx (upstream 0.5)  fastnn {dx}   notes [11, 13, 15]")
    print(f"dW rows            fastnn {layer1.grads['weight'][0]}   notes [0.5, 1, 1.5] in every row")
    print(f"db                 fastnn {layer1.grads['bias']}   notes 0.5 each")

    layer2 = fastnn.Linear(4, 2, "sigmoid", init="zeros", dtype=np.float64)
    a2 = layer2.forward(z)
    print(f"a2 = sigmoid(0)    fastnn {a2}   notes 0.5")
    layer2.backward(np.full(2, 0.5))
    print(f"dz2                fastnn {layer2.grads['bias']}   notes 0.125")
    print(f"dW2 rows           fastnn {layer2.grads['weight'][0]}   notes [1.75, 4, 6.25, 8.5]")
    net = fastnn.Network([fastnn.Linear(2, 3, "sigmoid"), fastnn.Linear(3, 1, "sigmoid")])
    print(f"2-3-1 parameters   fastnn {net.parameter_count()}   notes 13")


if __name__ == "__main__":
    main()
