package sqlstore

// Translate exposes the driver error translation to the tests.
var Translate = translate
