//! Entity transforms over datagrams: quantization, delta compression, priorities, interest.
