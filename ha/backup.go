package ha

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/hashicorp/raft"

	"github.com/pgbastion/pgbastion/ha/fsm"
	"github.com/pgbastion/pgbastion/ha/transport"
)

// Backup format (pgbastion raft backup|restore):
//
//	PGBASTION-RAFT-BACKUP 1\n
//	<BackupInfo as one line of JSON>\n
//	<state snapshot, exactly Size bytes, in the FSM's snapshot format>
//
// The SHA-256 in the info covers the snapshot bytes.
const backupHeader = "PGBASTION-RAFT-BACKUP 1\n"

// maxBackupSize bounds a backup: it must fit one forwarding frame. The state is kilobytes.
const maxBackupSize = transport.MaxFrame - 4096

// BackupInfo describes a backup.
type BackupInfo struct {
	// Node is the leader that took it; Index the last log index it contains.
	Node    string    `json:"node"`
	Index   uint64    `json:"index"`
	Epoch   uint64    `json:"epoch"`
	TakenAt time.Time `json:"taken_at"`
	Size    int64     `json:"size"`
	SHA256  string    `json:"sha256"`
}

// Backup writes a backup of the replicated state to w. It is taken on the leader (forwarded if
// this node is not) after a Raft barrier, so it holds every command committed before the call.
func (n *Node) Backup(ctx context.Context, w io.Writer) (BackupInfo, error) {
	var data []byte
	resp, err := n.onLeader(ctx, rpcRequest{Kind: rpcBackup}, func() error {
		var err error
		data, err = n.backupLocal(ctx)
		return err
	})
	if err != nil {
		return BackupInfo{}, fmt.Errorf("backup: %w", err)
	}
	if data == nil {
		data = resp.Data
	}
	info, _, err := ReadBackup(bytes.NewReader(data))
	if err != nil {
		return BackupInfo{}, fmt.Errorf("backup: leader sent an invalid backup: %w", err)
	}
	if _, err := w.Write(data); err != nil {
		return BackupInfo{}, fmt.Errorf("backup: write: %w", err)
	}
	return info, nil
}

func (n *Node) backupLocal(ctx context.Context) ([]byte, error) {
	timeout := defaultApplyTimeout
	if dl, ok := ctx.Deadline(); ok {
		timeout = time.Until(dl)
	}
	if err := n.await(ctx, n.raft.Barrier(timeout)); err != nil {
		return nil, fmt.Errorf("barrier: %w", err)
	}
	st := n.fsm.State()
	var snap bytes.Buffer
	if err := fsm.WriteSnapshot(&snap, st); err != nil {
		return nil, err
	}
	sum := sha256.Sum256(snap.Bytes())
	info := BackupInfo{Node: n.name, Index: st.Index, Epoch: st.Epoch, TakenAt: time.Now().UTC(),
		Size: int64(snap.Len()), SHA256: hex.EncodeToString(sum[:])}
	line, err := json.Marshal(info)
	if err != nil {
		return nil, err
	}
	var out bytes.Buffer
	out.WriteString(backupHeader)
	out.Write(line)
	out.WriteByte('\n')
	out.Write(snap.Bytes())
	if out.Len() > maxBackupSize {
		return nil, fmt.Errorf("state of %d bytes is too large to back up (limit %d)", out.Len(), maxBackupSize)
	}
	return out.Bytes(), nil
}

// ReadBackup parses and verifies a backup (header, checksum, state). It returns the info and
// the state it holds; nothing is applied.
func ReadBackup(r io.Reader) (BackupInfo, *fsm.State, error) {
	info, snap, err := readBackup(r)
	if err != nil {
		return info, nil, err
	}
	st, err := fsm.ReadSnapshot(bytes.NewReader(snap))
	if err != nil {
		return info, nil, fmt.Errorf("backup state: %w", err)
	}
	return info, st, nil
}

func readBackup(r io.Reader) (BackupInfo, []byte, error) {
	var info BackupInfo
	br := bufio.NewReader(io.LimitReader(r, maxBackupSize+1))
	head := make([]byte, len(backupHeader))
	if _, err := io.ReadFull(br, head); err != nil || string(head) != backupHeader {
		return info, nil, errors.New("not a PGBastion raft backup")
	}
	line, err := br.ReadString('\n')
	if err != nil {
		return info, nil, fmt.Errorf("backup info: %w", err)
	}
	if err := json.Unmarshal([]byte(strings.TrimSpace(line)), &info); err != nil {
		return info, nil, fmt.Errorf("backup info: %w", err)
	}
	if info.Size <= 0 || info.Size > maxBackupSize {
		return info, nil, fmt.Errorf("backup info: bad size %d", info.Size)
	}
	snap := make([]byte, info.Size)
	if _, err := io.ReadFull(br, snap); err != nil {
		return info, nil, fmt.Errorf("backup state: truncated: %w", err)
	}
	if _, err := br.ReadByte(); err != io.EOF {
		return info, nil, errors.New("backup: trailing data after the state")
	}
	sum := sha256.Sum256(snap)
	if hex.EncodeToString(sum[:]) != info.SHA256 {
		return info, nil, errors.New("backup: checksum mismatch")
	}
	return info, snap, nil
}

// Restore replaces the whole replicated state of the running cluster with a backup: the
// leader (forwarded if needed) installs it as a Raft snapshot, which followers receive, and
// then begins a new epoch, so directives pending in the backup are superseded and every time
// recorded in it is treated as older than the restore. Raft membership is not changed. This is
// disaster recovery: everything committed since the backup is lost.
func (n *Node) Restore(ctx context.Context, r io.Reader) (BackupInfo, error) {
	info, snap, err := readBackup(r)
	if err != nil {
		return info, fmt.Errorf("restore: %w", err)
	}
	if _, err := fsm.ReadSnapshot(bytes.NewReader(snap)); err != nil {
		return info, fmt.Errorf("restore: %w", err)
	}
	_, err = n.onLeader(ctx, rpcRequest{Kind: rpcRestore, Data: snap}, func() error { return n.restoreLocal(ctx, snap) })
	if err != nil {
		return info, fmt.Errorf("restore: %w", err)
	}
	return info, nil
}

func (n *Node) restoreLocal(ctx context.Context, snap []byte) error {
	st, rerr := fsm.ReadSnapshot(bytes.NewReader(snap))
	if rerr != nil {
		return rerr
	}
	// Index: raft moves its log past the backup's index, so every later command has a larger
	// index than anything recorded in the restored state.
	meta := &raft.SnapshotMeta{Version: raft.SnapshotVersionMax, Index: st.Index, Size: int64(len(snap))}
	// raft.Restore blocks on a future like Apply does; wait for it the same bounded way.
	restored := make(chan error, 1)
	go func() { restored <- n.raft.Restore(meta, bytes.NewReader(snap), defaultApplyTimeout) }()
	var err error
	select {
	case err = <-restored:
	case <-ctx.Done():
		err = ctx.Err()
	case <-n.ctx.Done():
		err = ErrClosed
	}
	if err != nil {
		return fmt.Errorf("raft restore: %w", err)
	}
	n.log.Warn("replicated state restored from a backup", "backup_index", st.Index)
	signal(n.reestablish)
	return nil
}
