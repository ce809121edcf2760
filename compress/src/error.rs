//! The error type of this crate.

/// Everything that can go wrong while configuring, compressing, decoding or applying updates and
/// slices. Messages say what is wrong and what to do about it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CompressError {
    /// A [`crate::CompressConfig`] field is out of range or inconsistent.
    #[error("invalid compression config: {0}")]
    InvalidConfig(String),
    /// A caller-supplied argument (weight, fraction, tensor list) is out of range.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The number of tensors does not match what the compressor/update was built for.
    #[error(
        "expected {expected} tensors, got {got}; pass one flat vector per model tensor, in the \
         same (name) order the compressor or update was built with"
    )]
    TensorCount {
        /// Tensors expected.
        expected: usize,
        /// Tensors given.
        got: usize,
    },
    /// A tensor has the wrong number of elements.
    #[error(
        "tensor {index} has {got} elements, expected {expected}; the update was made for a \
         different model shape"
    )]
    TensorLength {
        /// Position of the tensor.
        index: usize,
        /// Elements expected.
        expected: usize,
        /// Elements given.
        got: usize,
    },
    /// An input value (or input plus residual) is NaN or infinite.
    #[error(
        "tensor {index} has a NaN or infinite value at element {element} (input plus \
         error-feedback residual); refuse to compress a diverged update, reset the trainer"
    )]
    NonFinite {
        /// Position of the tensor.
        index: usize,
        /// Element within the tensor.
        element: usize,
    },
    /// Compressed-update bytes are malformed or not canonical.
    #[error("malformed compressed update: {0}; the sender is faulty or malicious, drop it")]
    Decode(String),
    /// Slice bytes are malformed or not canonical.
    #[error("malformed slice: {0}; the sender is faulty or malicious, drop it")]
    SliceDecode(String),
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, CompressError>;
