//! The crate's error type.

/// Everything that can go wrong loading, checking, training or combining model tensors.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A tensor has the wrong shape for the configured model.
    #[error("tensor `{name}` has shape {got:?}, expected {expected:?}")]
    ShapeMismatch {
        /// Tensor name.
        name: String,
        /// Shape the configuration requires.
        expected: Vec<usize>,
        /// Shape found.
        got: Vec<usize>,
    },
    /// A tensor the configured model needs is absent.
    #[error("tensor `{0}` is missing")]
    MissingTensor(String),
    /// A tensor that the configured model does not have is present.
    #[error("unexpected tensor `{0}`")]
    UnexpectedTensor(String),
    /// A tensor is stored in a dtype other than f32.
    #[error("tensor `{name}` has dtype {got}, expected F32")]
    WrongDtype {
        /// Tensor name.
        name: String,
        /// The dtype found.
        got: String,
    },
    /// A tensor (or the loss) contains NaN or infinity.
    #[error("tensor `{name}` contains NaN or infinite values")]
    NonFinite {
        /// Tensor name (`loss` for a non-finite training loss).
        name: String,
    },
    /// The bytes are not a valid safetensors blob.
    #[error("cannot decode safetensors: {0}")]
    Decode(String),
    /// Bad training data or pages (empty dataset, token out of range, ragged pages, ...).
    #[error("data error: {0}")]
    Data(String),
    /// The model configuration cannot describe a valid model.
    #[error("invalid model config: {0}")]
    InvalidConfig(String),
    /// The requested compute device is unknown, not compiled in, or not present.
    #[error("device error: {0}")]
    Device(String),
    /// A Hugging Face model directory cannot be written or read (I/O, bad `config.json`,
    /// unsupported architecture or options).
    #[error("hugging face checkpoint: {0}")]
    Hf(String),
    /// An error from the tensor library.
    #[error("candle: {0}")]
    Candle(#[from] candle_core::Error),
}

/// Result with [`ModelError`].
pub type Result<T> = std::result::Result<T, ModelError>;
