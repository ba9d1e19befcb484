//! The bridge between a user's channels and the daemon's: session channels relayed message by
//! message (requests, data, exit status, signals), `-L` forwards copied as byte streams.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use russh::client;
use russh::server::{self, Msg};
use russh::{Channel, ChannelMsg};

/// Copy a forwarded (`direct-tcpip`) channel both ways until either side ends.
pub(super) fn relay_forward(down: Channel<Msg>, up: Channel<client::Msg>) {
    tokio::spawn(async move {
        let mut down = down.into_stream();
        let mut up = up.into_stream();
        let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
    });
}

/// Relay one session channel both ways; channel-request replies come from the daemon.
pub(super) fn relay_session(down: Channel<Msg>, up: Channel<client::Msg>, handle: server::Handle) {
    let id = down.id();
    let (mut down_rx, down_tx) = down.split();
    let (mut up_rx, up_tx) = up.split();
    // Requests sent to the daemon with want-reply, whose reply we still owe the user.
    let pending = Arc::new(AtomicU32::new(0));

    let p = pending.clone();
    let h = handle.clone();
    tokio::spawn(async move {
        while let Some(msg) = down_rx.wait().await {
            let sent = match msg {
                ChannelMsg::Data { data } => up_tx.data_bytes(data).await,
                ChannelMsg::ExtendedData { data, ext } => {
                    up_tx.extended_data_bytes(ext, data).await
                }
                ChannelMsg::Eof => up_tx.eof().await,
                ChannelMsg::Close => break,
                ChannelMsg::RequestPty {
                    term,
                    col_width,
                    row_height,
                    pix_width,
                    pix_height,
                    terminal_modes,
                    ..
                } => {
                    p.fetch_add(1, Ordering::SeqCst);
                    up_tx
                        .request_pty(
                            true,
                            &term,
                            col_width,
                            row_height,
                            pix_width,
                            pix_height,
                            &terminal_modes,
                        )
                        .await
                }
                ChannelMsg::SetEnv {
                    variable_name,
                    variable_value,
                    ..
                } => {
                    p.fetch_add(1, Ordering::SeqCst);
                    up_tx.set_env(true, variable_name, variable_value).await
                }
                ChannelMsg::RequestShell { .. } => {
                    p.fetch_add(1, Ordering::SeqCst);
                    up_tx.request_shell(true).await
                }
                ChannelMsg::Exec { command, .. } => {
                    p.fetch_add(1, Ordering::SeqCst);
                    up_tx.exec(true, command).await
                }
                ChannelMsg::RequestSubsystem { name, .. } => {
                    p.fetch_add(1, Ordering::SeqCst);
                    up_tx.request_subsystem(true, name).await
                }
                ChannelMsg::WindowChange {
                    col_width,
                    row_height,
                    pix_width,
                    pix_height,
                } => {
                    up_tx
                        .window_change(col_width, row_height, pix_width, pix_height)
                        .await
                }
                ChannelMsg::Signal { signal } => up_tx.signal(signal).await,
                ChannelMsg::RequestX11 { .. } => {
                    let _ = h.channel_failure(id).await;
                    Ok(())
                }
                _ => Ok(()),
            };
            if sent.is_err() {
                break;
            }
        }
        let _ = up_tx.close().await;
    });

    tokio::spawn(async move {
        let take = || {
            pending
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
        };
        while let Some(msg) = up_rx.wait().await {
            let sent = match msg {
                ChannelMsg::Data { data } => down_tx.data_bytes(data).await.is_ok(),
                ChannelMsg::ExtendedData { data, ext } => {
                    down_tx.extended_data_bytes(ext, data).await.is_ok()
                }
                ChannelMsg::Eof => down_tx.eof().await.is_ok(),
                ChannelMsg::ExitStatus { exit_status } => {
                    down_tx.exit_status(exit_status).await.is_ok()
                }
                ChannelMsg::ExitSignal {
                    signal_name,
                    core_dumped,
                    error_message,
                    lang_tag,
                } => handle
                    .exit_signal_request(id, signal_name, core_dumped, error_message, lang_tag)
                    .await
                    .is_ok(),
                ChannelMsg::Success => !take() || handle.channel_success(id).await.is_ok(),
                ChannelMsg::Failure => !take() || handle.channel_failure(id).await.is_ok(),
                ChannelMsg::Close => break,
                _ => true,
            };
            if !sent {
                break;
            }
        }
        let _ = down_tx.close().await;
    });
}
