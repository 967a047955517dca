package main

import (
	"fmt"
	"io"
	"log/slog"
	"strings"
)

// newLogger returns the JSON logger every component receives.
func newLogger(w io.Writer, level string) (*slog.Logger, error) {
	log, _, err := newLevelLogger(w, level)
	return log, err
}

// newLevelLogger is newLogger with its level in a LevelVar, which a reload
// sets: every component that holds the logger follows at once.
func newLevelLogger(w io.Writer, level string) (*slog.Logger, *slog.LevelVar, error) {
	l, err := parseLevel(level)
	if err != nil {
		return nil, nil, err
	}
	lv := new(slog.LevelVar)
	lv.Set(l)
	return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: lv})), lv, nil
}

// parseLevel reads debug, info (or ""), warn (or warning) or error.
func parseLevel(level string) (slog.Level, error) {
	switch strings.ToLower(level) {
	case "", "info":
		return slog.LevelInfo, nil
	case "debug":
		return slog.LevelDebug, nil
	case "warn", "warning":
		return slog.LevelWarn, nil
	case "error":
		return slog.LevelError, nil
	}
	return 0, fmt.Errorf("log level %q: want debug, info, warn or error", level)
}
