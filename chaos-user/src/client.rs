//! A client of the daemon's API over its unix socket, for the `chaos apply/list/...` commands.

use std::path::{Path, PathBuf};

use http_body_util::{BodyExt as _, Full};
use hyper::{Method, Request, StatusCode, body::Bytes};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ClientError {
    #[error("no chaos daemon is running at {0} (start one with `chaos daemon`)")]
    NoDaemon(PathBuf),
    #[error("talking to the daemon: {0}")]
    Http(String),
    /// The daemon refused the request; `field` names what was wrong.
    #[error("{}{message}", if field.is_empty() { String::new() } else { format!("{field}: ") })]
    Refused {
        status: StatusCode,
        field: String,
        message: String,
    },
}

pub struct Client {
    socket: PathBuf,
}

impl Client {
    pub fn new(socket: &Path) -> Self {
        Self {
            socket: socket.to_owned(),
        }
    }

    /// Sends one request; a 4xx or 5xx answer becomes [`ClientError::Refused`].
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, ClientError> {
        let (status, value) = self.call_status(method, path, body).await?;
        if status.is_client_error() || status.is_server_error() {
            return Err(ClientError::Refused {
                status,
                field: value["field"].as_str().unwrap_or_default().to_owned(),
                message: value["error"]
                    .as_str()
                    .map_or_else(|| value.to_string(), str::to_owned),
            });
        }
        Ok(value)
    }

    /// Sends one request and returns whatever status and body come back.
    pub async fn call_status(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(StatusCode, Value), ClientError> {
        let stream = tokio::net::UnixStream::connect(&self.socket)
            .await
            .map_err(|_| ClientError::NoDaemon(self.socket.clone()))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| ClientError::Http(e.to_string()))?;
        let driver = tokio::spawn(connection);
        let bytes = body.map(|b| b.to_string()).unwrap_or_default();
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "chaos")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(bytes)))
            .map_err(|e| ClientError::Http(e.to_string()))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| ClientError::Http(e.to_string()))?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| ClientError::Http(e.to_string()))?
            .to_bytes();
        driver.abort();
        let value: Value = if body.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&body)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()))
        };
        Ok((status, value))
    }
}
