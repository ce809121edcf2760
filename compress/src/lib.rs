//! # apiary-compress
//!
//! Compressed model updates (chunked top-k with error feedback, optional DCT, quantized values,
//! packed indices) and Boltzmann-style window-seeded slices. (Being written.)
