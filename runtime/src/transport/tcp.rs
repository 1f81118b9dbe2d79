//! TCP set-up for frame streams.

use tokio::net::{TcpStream, ToSocketAddrs};

use super::error::TransportError;

/// Connects to `addr` and [`tune`]s the socket.
///
/// # Errors
/// `Io` when the connection cannot be made.
pub async fn connect<A: ToSocketAddrs>(addr: A) -> Result<TcpStream, TransportError> {
    let stream = TcpStream::connect(addr).await?;
    tune(&stream)?;
    Ok(stream)
}

/// Settings every frame socket needs, on both ends (an accepted stream too).
///
/// `TCP_NODELAY`: a control frame is one small write followed by a wait for the reply; Nagle's
/// algorithm would hold it back for the peer's delayed ACK (tens of milliseconds per call).
///
/// # Errors
/// `Io` when the option cannot be set.
pub fn tune(stream: &TcpStream) -> Result<(), TransportError> {
    stream.set_nodelay(true)?;
    Ok(())
}
