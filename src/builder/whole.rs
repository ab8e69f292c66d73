//! The [`Encoder`]'s whole-message methods: a built message and its body, queued in one call.

use bytes::Bytes;

use crate::proto::encode::Encoder;
use crate::proto::error::{Error, ErrorKind, Result};
use crate::proto::message::{Request, Response};

fn body_matches(has: bool, body: &Option<Bytes>) -> Result<()> {
    if has != body.is_some() {
        return Err(Error::new(
            ErrorKind::InvalidState,
            0,
            if has {
                "the message declares a body but none was given"
            } else {
                "a body was given for a message with null-body"
            },
        ));
    }
    Ok(())
}

impl Encoder {
    /// Queues a whole request: its head, then `body` as one chunk and the last chunk `0`.
    /// `body` must be given exactly when the request declares one. Requests with a preview
    /// need the stop-and-wait of a [`ClientTransaction`](crate::transaction::ClientTransaction)
    /// and are refused here.
    pub fn whole_request(&mut self, req: &Request, body: Option<Bytes>) -> Result<()> {
        body_matches(req.body.is_some(), &body)?;
        if req.body.is_some() && req.preview().is_some() {
            return Err(Error::new(
                ErrorKind::InvalidState,
                0,
                "a request with Preview is sent through a ClientTransaction",
            ));
        }
        self.request_head(req)?;
        if let Some(b) = body {
            self.data(b)?;
            self.end(false)?;
        }
        Ok(())
    }

    /// Queues a whole response: its head, then `body` as one chunk and the last chunk `0`.
    /// For a 206 use [`Encoder::partial_response`].
    pub fn whole_response(&mut self, res: &Response, body: Option<Bytes>) -> Result<()> {
        body_matches(res.body.is_some(), &body)?;
        if res.status == 206 {
            return Err(Error::new(
                ErrorKind::InvalidState,
                0,
                "a 206 ends with use-original-body; use partial_response",
            ));
        }
        self.response_head(res)?;
        if let Some(b) = body {
            self.data(b)?;
            self.end(false)?;
        }
        Ok(())
    }

    /// Queues a 206: its head, the new body `prefix` (may be empty), then
    /// `0; use-original-body=original_from`: the rest of the body is the original from that
    /// offset.
    pub fn partial_response(
        &mut self,
        res: &Response,
        prefix: Bytes,
        original_from: u64,
    ) -> Result<()> {
        if res.status != 206 || res.body.is_none() {
            return Err(Error::new(
                ErrorKind::InvalidState,
                0,
                "partial_response needs a 206 with a body",
            ));
        }
        self.response_head(res)?;
        self.data(prefix)?;
        self.end_use_original_body(original_from)?;
        Ok(())
    }
}
